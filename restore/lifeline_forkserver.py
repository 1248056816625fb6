"""Imported by the multiprocessing fork server as it starts (``restore.data`` names it as the fork
server's preload), and by nothing else: the fork server then dies with the trainer that started
it (``restore.lifeline``). Importing it anywhere else would tie that process to its parent too."""

from restore.lifeline import die_with_parent

die_with_parent()
