"""The CrypTen backend: lower the rewritten fx graph to CrypTensor operations and run it between parties."""
