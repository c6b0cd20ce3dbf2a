"""Networks and the math on them: backbones and their pretrained weights, attention maps
and input attributions, contextual decomposition, and the alignment losses."""
