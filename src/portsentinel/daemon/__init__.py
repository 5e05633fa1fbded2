"""The live daemon: the only place where capture, detection and response are wired together."""
