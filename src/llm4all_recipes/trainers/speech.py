"""The speech-sft trainer: TRL's SFTTrainer, with the model's own loss."""

from transformers import Trainer
from trl import SFTTrainer


class SpeechSFTTrainer(SFTTrainer):
    """SFTTrainer for a speech-text model. The loss is the model's own forward: its language model reads the audio
    through input embeddings built from the encoder and projector, which TRL's fused LM head (it calls the text
    backbone directly) would skip. Batches come from the stage's collator (speech/sft_data.py), labels included."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
