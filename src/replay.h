/* replay.h - moat --replay: run a session file through the policies (DESIGN.md §12). */
#ifndef MOAT_REPLAY_H
#define MOAT_REPLAY_H

/* Prints the transcript on stdout; returns the process exit status. */
/* shadow: --shadow, print the shadow chain's verdict beside each reply. */
int replay_run(const char *config, const char *file, int shadow);

#endif
