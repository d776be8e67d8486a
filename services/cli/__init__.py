"""``corral``: the command line, a client of the gateway's REST API like ``lxc`` (see ``main``)."""
