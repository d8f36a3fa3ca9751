"""Using trained runs: prediction on new images and export."""
