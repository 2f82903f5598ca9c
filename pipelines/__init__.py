"""Pipeline composition, options and the `crawl2clip` command."""
