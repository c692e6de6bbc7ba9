/* replay.h - moat --replay: run a session file through the policies (DESIGN.md §12). */
#ifndef MOAT_REPLAY_H
#define MOAT_REPLAY_H

/* Prints the transcript on stdout; returns the process exit status. */
int replay_run(const char *config, const char *file);

#endif
