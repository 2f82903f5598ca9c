"""`crawl2clip remove`: a removal list applied to a finished run, as files are rewritten."""
