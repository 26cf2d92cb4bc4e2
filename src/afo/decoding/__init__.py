"""Brain decoding by image retrieval (paper 4.5): ranking candidates, retrieval accuracy, a user's own images."""
