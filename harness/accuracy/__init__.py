"""Accuracy on the deployed artifact: COCO datasets and subsets (datasets), the generated sample
(sample), class mapping (categories), background decoding (loader), pycocotools evaluation and
the accuracy pass (evaluate), agreement with the reference (agreement), derived deltas and gates
(derive), and the disagreement gallery (gallery). Nothing heavy is imported here."""
