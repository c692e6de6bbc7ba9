/* printconfig.h - moat -c FILE --print-config. */
#ifndef MOAT_PRINTCONFIG_H
#define MOAT_PRINTCONFIG_H

/* Load path like --check, then print every setting, defaults included, in
 * the config's own syntax on stdout.  Returns the exit code. */
int print_config(const char *path);

#endif
