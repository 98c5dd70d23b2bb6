"""Small files shipped with the package: the trained digits ViT of the vision accuracy testbed
(``vit_digits/``: config.json, model.safetensors, testbed.json), made by scripts/train_vit_digits.py, and the
trained digits VLM of the visual-token quality testbed (``vlm_digits/``: a LLaVA checkpoint with its tokenizer
and processor files, testbed.json), made by scripts/train_vlm_digits.py."""
