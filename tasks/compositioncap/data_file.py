"""The CompositionCap data file, the value of the task YAMLs' ``data_files: {test: !function data_file.test_file}``.

lmms-eval executes this file when it loads a CompositionCap task, and only then (indexing the folder reads
no tag): ``test_file`` is the checked path of ``$COMPOSITIONCAP_ROOT/compositioncap_test.jsonl``. An unset
or wrong folder raises here, naming ``$COMPOSITIONCAP_ROOT``, before lmms-eval loads (and retries) anything.
"""

from finecaption_plugin.compositioncap_data import test_file as _checked_test_file

test_file = _checked_test_file()
