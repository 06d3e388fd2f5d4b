"""Load models over the transport: the engine that runs one configuration's workers."""
