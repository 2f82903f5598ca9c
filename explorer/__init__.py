"""The explorer: `crawl2clip serve` (an HTTP API and a web page over an INDEX_DIR) and
`crawl2clip subset` (the same selections written as parquet)."""
