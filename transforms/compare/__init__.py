"""`crawl2clip compare`: training sets made from one finished run (raw, CLIP-filtered, tagged,
pruned), the held-out pairs none of them sees, open_clip's own trainer on each, evaluation."""
