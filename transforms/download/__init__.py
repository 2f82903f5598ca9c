"""Plain-function layers of the image downloader: image checks and resizing, robots rules, address guards."""
