"""MS1MV2-style cleaning: features of a pack under a bootstrap model, the rules that remove
noisy images and identities, and the removal table that records every decision."""
