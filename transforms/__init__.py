"""One module (or folder) per pipeline stage."""
