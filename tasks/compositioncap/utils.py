"""Hooks named by the CompositionCap YAML files; the work is done in ``finecaption_plugin.compositioncap``.

lmms-eval executes this file afresh for every ``!function`` tag, so it keeps no state of its own.
"""

from finecaption_plugin import compositioncap

doc_to_visual = compositioncap.doc_to_visual
doc_to_text = compositioncap.doc_to_text
process_results = compositioncap.process_results



def rouge_l(samples, args=None):
    return compositioncap.aggregate(samples, "ROUGE-L", args)


def bleu_4(samples, args=None):
    return compositioncap.aggregate(samples, "BLEU-4", args)


def meteor(samples, args=None):
    return compositioncap.aggregate(samples, "METEOR", args)


def cider(samples, args=None):
    return compositioncap.aggregate(samples, "CIDEr", args)


def bertscore(samples, args=None):
    return compositioncap.aggregate(samples, "BERTScore", args)


def __getattr__(name):
    # `data_files: {test: !function utils.test_file}` in the YAML: the path, checked, when the task loads.
    if name == "test_file":
        return compositioncap.test_file()
    # `process_docs: !function utils.<task name>_docs`: the checked records of that task variant.
    if name.endswith("_docs"):
        return compositioncap.variant_docs(name.removesuffix("_docs"))
    raise AttributeError(name)
