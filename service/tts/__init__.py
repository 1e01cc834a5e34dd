"""ChatTTS text-to-speech: text and speakers, sampling, the continuous-batching engine."""
