"""The Centrifugo client protocol v2 and server API, free of I/O."""
