"""How modality features become decoder inputs: projectors, embeddings, joint layers, splicing."""
