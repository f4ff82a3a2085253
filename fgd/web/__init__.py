"""fgd's HTTP side: the server loop, the front (sync invoke, raw uploads), the management API,
the gateway listener, authentication and upload decoding."""
