"""Record parsers: turn a file's lines into logical records. They know nothing about files or offsets' meaning;
they get lines with their start offsets and say which offset is safe to checkpoint (`held_from`)."""
