"""advguard training: data, models, attacks, defences, evaluation and export."""
