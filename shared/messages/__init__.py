"""Request and reply models between services, one module per service that answers them.

``shared/messages/storage.py`` holds what the storage service accepts, and so on; the
caller imports the same class the service validates with.
"""
