/* usbx-ckpt — inspect, complete and convert checkpoints (safetensors).  See usbx-ckpt(1).
 *
 * A subcommand is one line in the table below: a name, an int f(int argc, char **argv) that
 * gets the subcommand's own argv (argv[0] is the subcommand name), and a one-line summary. */
#include "ckpt.h"
#include "fixtures.h"
#include "safetensors.h"
#include "util.h"
#include <stdio.h>
#include <string.h>

typedef struct {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *summary;
} subcommand;

static const subcommand commands[] = {
  {"inspect", usbx_ckpt_inspect_main, "one record per tensor of files or checkpoint folders, then a summary"},
  {"complete", usbx_ckpt_complete_main, "add missing base tensors and files to fine-tuned checkpoints, convert floats"},
  {"convert", usbx_ckpt_convert_main, "convert the float tensors of files in place, atomically"},
  {"init", usbx_ckpt_init_main, "write a checkpoint folder with seeded random weights from configs"},
  {"check-fixtures", usbx_check_fixtures_main, "run a fixture folder's cases against the model, one line per group"},
};
#define NCOMMANDS (sizeof commands / sizeof *commands)

static void usage(FILE *f) {
  fprintf(f, "usage: usbx-ckpt COMMAND [OPTIONS] ARGS...\n\ncommands:\n");
  for (size_t i = 0; i < NCOMMANDS; i++) fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
  fprintf(f, "\n'usbx-ckpt COMMAND --help' describes a command; reports are JSONL on stdout.\n");
}

int main(int argc, char **argv) {
  usbx_set_progname("usbx-ckpt");
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    usage(stdout);
    return 0;
  }
  if (!strcmp(argv[1], "--version")) {
    printf("usbx-ckpt %s\n", USBX_VERSION);
    return 0;
  }
  for (size_t i = 0; i < NCOMMANDS; i++)
    if (!strcmp(argv[1], commands[i].name)) {
      usbx_st_cleanup_on_signals();   /* interrupted writes leave no temporary files */
      return commands[i].run(argc - 1, argv + 1);
    }
  char list[256] = "";
  for (size_t i = 0; i < NCOMMANDS; i++)
    snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", commands[i].name);
  usbx_usage_die("unknown command '%s' (commands: %s)", argv[1], list);
}
