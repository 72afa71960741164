"""Text summarization with GRU/LSTM pointer-generator networks, trained data-parallel with Horovod."""
