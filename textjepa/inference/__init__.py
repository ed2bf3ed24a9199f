"""The inference core: a trained checkpoint's encoders and world model computing on tensors.

Everything that runs a trained model goes through here: the Python API (textjepa/api.py, a facade over it), the
agent (`infer`, the server), the server's model worker, eval-world, train-bridge / eval-conditioning and the end of
train-world (its retrieval index). One home for each inference step:

- encoding.py: texts -> model input under the checkpoint's data contract -> pooled latents (`TextEncoder`);
- world.py: a world checkpoint loaded (`WorldInference`): condition on an action, predict, embed replies in the
  prediction's space, look up the retrieval index;
- conversation.py: OpenAI-style messages -> the `User: ...\\nAssistant: ...` context the world model reads.
"""
