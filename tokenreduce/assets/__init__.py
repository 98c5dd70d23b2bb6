"""Small files shipped with the package: the trained digits ViT of the vision accuracy testbed
(``vit_digits/``: config.json, model.safetensors, testbed.json), made by scripts/train_vit_digits.py."""
