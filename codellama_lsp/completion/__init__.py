"""From a cursor to a suggestion, without a model: context windows, the family's prompt, planning, post-processing.

Pure functions of text and token ids; torch is never imported here.
"""
