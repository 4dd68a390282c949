"""Host-framework shims, shipped as ``finecaption_plugin.patches``: one sub-package per framework we change.

Each sub-package holds one small module per fix, its reason in the module's docstring, and a README table
(problem, fix, where, test). ``lmms_eval``: applied by the ``lmms_eval.models`` entry point
(``finecaption_plugin.lmms_eval_manifest``). ``llava``: applied by the user's one call,
``finecaption_plugin.patches.llava.apply()``, since LLaVA's scripts have no plugin hook. Nothing in a host
framework's files is edited.
"""
