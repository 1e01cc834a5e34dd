"""ChatTTS text-to-speech: text and speaker preparation, sampling, the continuous-batching engine."""
