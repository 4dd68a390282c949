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

rouge_l = hooks.aggregator("ROUGE-L")
bleu_4 = hooks.aggregator("BLEU-4")
meteor = hooks.aggregator("METEOR")
cider = hooks.aggregator("CIDEr")
bertscore = hooks.aggregator("BERTScore")
attribute_accuracy = hooks.aggregator("attribute_accuracy")

# process_docs of each task YAML: the records of its task, all checked, under its task name (which keys
# its state, scores and breakdown folder).


compositioncap_aarc_docs = hooks.variant_docs("compositioncap_aarc")
compositioncap_rdc_docs = hooks.variant_docs("compositioncap_rdc")
compositioncap_global_docs = hooks.variant_docs("compositioncap_global")
compositioncap_aarc_mask_docs = hooks.variant_docs("compositioncap_aarc_mask")
compositioncap_aarc_bbox_docs = hooks.variant_docs("compositioncap_aarc_bbox")
compositioncap_aarc_bbox_text_docs = hooks.variant_docs("compositioncap_aarc_bbox_text")
compositioncap_aarc_contour_docs = hooks.variant_docs("compositioncap_aarc_contour")
compositioncap_aarc_overlay_docs = hooks.variant_docs("compositioncap_aarc_overlay")
compositioncap_aarc_crop_docs = hooks.variant_docs("compositioncap_aarc_crop")
compositioncap_rdc_mask_docs = hooks.variant_docs("compositioncap_rdc_mask")
compositioncap_rdc_bbox_docs = hooks.variant_docs("compositioncap_rdc_bbox")
compositioncap_rdc_bbox_text_docs = hooks.variant_docs("compositioncap_rdc_bbox_text")
compositioncap_rdc_contour_docs = hooks.variant_docs("compositioncap_rdc_contour")
compositioncap_rdc_overlay_docs = hooks.variant_docs("compositioncap_rdc_overlay")
compositioncap_rdc_crop_docs = hooks.variant_docs("compositioncap_rdc_crop")
