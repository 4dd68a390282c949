"""The functions the CompositionCap task YAMLs name (``!function utils.<name>``); the work is done in
``finecaption_plugin.compositioncap_hooks``.

lmms-eval executes this file afresh for every ``!function`` tag, so it keeps no state; executing it needs
no data folder (the data file is ``data_file.py``'s).
"""

from finecaption_plugin import compositioncap_hooks as hooks

doc_to_visual = hooks.doc_to_visual
doc_to_text = hooks.doc_to_text
process_results = hooks.process_results


# The aggregation of each metric (``_generate_config.aggregation_function`` names them): every metric of a
# task is scored once, over the whole task, by ``hooks.aggregate``.


def rouge_l(samples, args=None):
    return hooks.aggregate(samples, "ROUGE-L", args)


def bleu_4(samples, args=None):
    return hooks.aggregate(samples, "BLEU-4", args)


def meteor(samples, args=None):
    return hooks.aggregate(samples, "METEOR", args)


def cider(samples, args=None):
    return hooks.aggregate(samples, "CIDEr", args)


def bertscore(samples, args=None):
    return hooks.aggregate(samples, "BERTScore", args)


def attribute_accuracy(samples, args=None):
    return hooks.aggregate(samples, "attribute_accuracy", args)


# process_docs of each task YAML: the records of its task, all checked, under its task name (which keys
# its state, scores and breakdown folder).


def compositioncap_aarc_docs(dataset):
    return hooks.select_docs(dataset, "aarc", "compositioncap_aarc")


def compositioncap_rdc_docs(dataset):
    return hooks.select_docs(dataset, "rdc", "compositioncap_rdc")


def compositioncap_global_docs(dataset):
    return hooks.select_docs(dataset, "global", "compositioncap_global")


def compositioncap_aarc_mask_docs(dataset):
    return hooks.select_docs(dataset, "aarc", "compositioncap_aarc_mask")


def compositioncap_aarc_bbox_docs(dataset):
    return hooks.select_docs(dataset, "aarc", "compositioncap_aarc_bbox")


def compositioncap_aarc_bbox_text_docs(dataset):
    return hooks.select_docs(dataset, "aarc", "compositioncap_aarc_bbox_text")


def compositioncap_aarc_contour_docs(dataset):
    return hooks.select_docs(dataset, "aarc", "compositioncap_aarc_contour")


def compositioncap_aarc_overlay_docs(dataset):
    return hooks.select_docs(dataset, "aarc", "compositioncap_aarc_overlay")


def compositioncap_aarc_crop_docs(dataset):
    return hooks.select_docs(dataset, "aarc", "compositioncap_aarc_crop")


def compositioncap_rdc_mask_docs(dataset):
    return hooks.select_docs(dataset, "rdc", "compositioncap_rdc_mask")


def compositioncap_rdc_bbox_docs(dataset):
    return hooks.select_docs(dataset, "rdc", "compositioncap_rdc_bbox")


def compositioncap_rdc_bbox_text_docs(dataset):
    return hooks.select_docs(dataset, "rdc", "compositioncap_rdc_bbox_text")


def compositioncap_rdc_contour_docs(dataset):
    return hooks.select_docs(dataset, "rdc", "compositioncap_rdc_contour")


def compositioncap_rdc_overlay_docs(dataset):
    return hooks.select_docs(dataset, "rdc", "compositioncap_rdc_overlay")


def compositioncap_rdc_crop_docs(dataset):
    return hooks.select_docs(dataset, "rdc", "compositioncap_rdc_crop")
