"""lmlab's own Lightning callbacks (the rest come from Lightning, named in conf/callbacks/)."""
