"""Chinese EMR datasets (WS 445-2014 / WS 363 data elements / WS 364 value sets) onto FHIR R4.

Pure row → resource mappings: `values` parses single data elements, `patient` maps 患者基本信息,
`lab` maps 检验报告 rows. Each mapper takes plain dicts keyed by canonical data-element names
(documented in its module) and returns `(resources, errors)`; none raises on bad data.
Column naming of a particular hospital's export is not known here: the importer maps columns
onto the canonical keys before calling these functions.
"""
