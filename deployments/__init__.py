"""Ray Serve deployments: one thin class per model stage (frontend, gpt, speaker_cache, sovits, vocoder)."""
