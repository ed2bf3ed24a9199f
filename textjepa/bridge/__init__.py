"""Training and measuring the prefix bridge (the projector itself, which the LLM decoders read, is
textjepa/decoders/prefix_bridge.py): the reply NLL under a prefix (scoring.py), the pairs it learns from
(data.py), its training (align.py, train.py: train-bridge) and the measure of its conditioning (evaluate.py:
eval-conditioning). It sits beside train/ and eval/, above the decoders and the inference core."""
