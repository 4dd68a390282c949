"""lmms-eval tasks shipped with finecaption-plugin; pass this folder to ``--include_path``."""
