"""The vocabulary's fixed layout, which the tokenizer builds and the batches, the masking and the model's
shape rely on: the special tokens take the first ids, then come the 256 byte symbols."""

SPECIAL_TOKENS = ("<pad>", "<unk>", "<mask>")
PAD_ID, UNK_ID, MASK_ID = 0, 1, 2
# Byte-level BPE needs all 256 byte symbols so that no Unicode text is ever out of vocabulary.
MIN_VOCAB = len(SPECIAL_TOKENS) + 256
