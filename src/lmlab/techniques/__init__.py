"""Fine-tuning techniques, one module each: freezing and layer-wise LR, peft, adversarial training, auxiliary MLM."""
