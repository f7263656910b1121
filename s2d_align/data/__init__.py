"""Data for the three training stages, as `datasets.DatasetDict`s built by `s2d prepare`.

Loaders: `iu_xray.load_iu_xray`, `mimic_cxr.load_mimic_cxr`, `phantom.generate_phantom`.
Stage-2 references: `references.attach_references`. The shared schema: `schema`. Which views a sample keeps:
`views` (the rule itself is `processing_s2d.select_views`, shared with training and generation).
"""
