"""Unit tests: pure logic only.

They run as an ordinary user, with no nats-server, no services, no LXC, libvirt or
kernel objects, in well under 30 s (`make unit`). Fakes are allowed here and only here;
anything that needs a real part belongs in the integration tests one directory up.
`tests/test_unit_unprivileged.py` runs this directory as `nobody` to keep it that way.
"""
