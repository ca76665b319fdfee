/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <getopt.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "format.h"
#include "macro.h"
#include "mpool-bus.h"
#include "parse-util.h"
#include "strv.h"
#include "terminal.h"

BusTransport arg_transport = TRANSPORT_SYSTEM;
const char *arg_address = NULL;
const char *arg_host = NULL;
JsonMode arg_json = JSON_OFF;
bool arg_no_pager = false;
bool arg_no_legend = false;
bool arg_quiet = false;
bool arg_ask_password = true;
bool arg_timeout_set = false;
uint64_t arg_timeout_usec = DEFAULT_TIMEOUT_USEC;
bool arg_force = false;
bool arg_all = false;
bool arg_pin = false;
bool arg_files = false;
bool arg_keep_alive_set = false;
int64_t arg_keep_alive_sec = 0;
const char *arg_revision = NULL;
static bool arg_revision_set = false;
const char *arg_precision = NULL;
uint32_t arg_max_workers = 0;
bool arg_normalize_set = false;
bool arg_normalize = false;
bool arg_no_truncate = false;
const char *arg_truncation_direction = NULL;
const char *arg_prompt_name = NULL;
uint32_t arg_dimensions = 0;
bool arg_null = false;
/* For the check that options go with their verbs. */
static bool arg_precision_set = false, arg_max_workers_set = false, arg_truncation_direction_set = false,
        arg_prompt_name_set = false, arg_dimensions_set = false;

#define VERB_ANY ((unsigned) -1)

/* s is one of the strings listed. */
#define ONE_OF(s, ...) strv_contains((char **) (const char *[]) { __VA_ARGS__, NULL }, (s))

typedef struct Verb {
        const char *name;
        unsigned min_args, max_args;    /* counting the verb itself */
        int (*dispatch)(int argc, char *argv[]);
} Verb;

static void help(void) {
        printf("%1$s [OPTIONS...] COMMAND ...\n\n"
               "%2$sInspect and drive mpoold, the model pool.%3$s\n\n"
               "Commands:\n"
               "  status [NAME...]           Show the pool and its models, or details of models\n"
               "  list                       List every known model with state and size\n"
               "  load NAME                  Load a model, with a progress bar on a terminal\n"
               "  unload NAME... | --all     Unload models\n"
               "  hold NAME -- COMMAND...    Keep a model loaded while COMMAND runs\n"
               "  monitor [NAME]             Print load and unload events as they happen\n"
               "  top                        Live view of the loaded models\n"
               "  set memory-limit SIZE      Change the pool's memory limit\n"
               "  set idle-timeout DURATION  Change the default keep-alive\n"
               "  inspect REPO               What a pull would fetch and the model would take\n"
               "  pull REPO                  Download a model from the hub into the store\n"
               "  cancel NAME                Cancel the download, or else the load, of a model\n"
               "  register NAME PATH         Add the model in directory PATH to the store\n"
               "  rm NAME                    Remove a model from the store\n"
               "  embed NAME TEXT...|-       Text embeddings computed by the model (from stdin with -)\n"
               "\nOptions:\n"
               "  -h --help                  Show this help\n"
               "     --version               Show the version\n"
               "     --system                Talk to mpoold on the system bus (default)\n"
               "     --user                  Talk to mpoold on the user bus\n"
               "     --address=ADDRESS       Talk to mpoold on the bus at ADDRESS\n"
               "  -H --host=[USER@]HOST      Talk to mpoold on a remote host, over ssh\n"
               "     --json=short|pretty     Print JSON (--json alone: short)\n"
               "     --no-pager              Do not pipe output into a pager\n"
               "     --no-legend             Print no column headers and footers\n"
               "  -q --quiet                 Print only what was asked for and errors\n"
               "     --timeout=DURATION      Method call timeout (default 25s; unless this is\n"
               "                             given, loads wait until done, and unload and\n"
               "                             set up to 5min for a password to be typed)\n"
               "     --no-ask-password       Do not ask for authorization interactively\n"
               "     --keep-alive=DURATION   load: unload after this long unused, or infinity\n"
               "     --pin                   load: never unload for idleness or memory\n"
               "     --precision=f32|f16|q8|q4\n"
               "                             load: keep the weights in this precision\n"
               "     --max-workers=N         load: compute with at most N workers at once\n"
               "     --files                 hold: hand COMMAND the weights files (fds from 3,\n"
               "                             $MPOOL_FDS, $MPOOL_FDNAMES, $MPOOL_FDS_PID)\n"
               "     --force                 unload: unload pinned models too; rm: unload first\n"
               "     --all                   unload: unload every model\n"
               "     --revision=REV          pull, inspect: branch, tag or commit (default: main)\n"
               "     --normalize, --no-normalize\n"
               "                             embed: scale vectors to length 1, or not (default:\n"
               "                             as the model's files say)\n"
               "     --no-truncate           embed: refuse texts longer than the model takes\n"
               "     --truncation-direction=right|left\n"
               "                             embed: which end of a long text is kept (right:\n"
               "                             the start, the default)\n"
               "     --prompt-name=NAME      embed: put the model's prompt NAME before each text\n"
               "     --dimensions=N          embed: keep the first N components of each vector\n"
               "     --null                  embed -: texts on stdin end with NUL, not newline\n"
               "\nSee the mpool-client(1) man page for details.\n",
               program_invocation_short_name, ansi(ANSI_BOLD), ansi(ANSI_NORMAL));
}

static int parse_argv(int argc, char *argv[]) {
        enum {
                ARG_VERSION = 0x100,
                ARG_SYSTEM,
                ARG_USER,
                ARG_ADDRESS,
                ARG_JSON,
                ARG_NO_PAGER,
                ARG_NO_LEGEND,
                ARG_TIMEOUT,
                ARG_NO_ASK_PASSWORD,
                ARG_KEEP_ALIVE,
                ARG_PIN,
                ARG_FILES,
                ARG_FORCE,
                ARG_ALL,
                ARG_REVISION,
                ARG_PRECISION,
                ARG_MAX_WORKERS,
                ARG_NORMALIZE,
                ARG_NO_NORMALIZE,
                ARG_NO_TRUNCATE,
                ARG_TRUNCATION_DIRECTION,
                ARG_PROMPT_NAME,
                ARG_DIMENSIONS,
                ARG_NULL,
        };
        static const struct option options[] = {
                { "help",            no_argument,       NULL, 'h'                 },
                { "version",         no_argument,       NULL, ARG_VERSION         },
                { "system",          no_argument,       NULL, ARG_SYSTEM          },
                { "user",            no_argument,       NULL, ARG_USER            },
                { "address",         required_argument, NULL, ARG_ADDRESS         },
                { "host",            required_argument, NULL, 'H'                 },
                { "json",            optional_argument, NULL, ARG_JSON            },
                { "no-pager",        no_argument,       NULL, ARG_NO_PAGER        },
                { "no-legend",       no_argument,       NULL, ARG_NO_LEGEND       },
                { "quiet",           no_argument,       NULL, 'q'                 },
                { "timeout",         required_argument, NULL, ARG_TIMEOUT         },
                { "no-ask-password", no_argument,       NULL, ARG_NO_ASK_PASSWORD },
                { "keep-alive",      required_argument, NULL, ARG_KEEP_ALIVE      },
                { "pin",             no_argument,       NULL, ARG_PIN             },
                { "files",           no_argument,       NULL, ARG_FILES           },
                { "force",           no_argument,       NULL, ARG_FORCE           },
                { "all",             no_argument,       NULL, ARG_ALL             },
                { "revision",        required_argument, NULL, ARG_REVISION        },
                { "precision",       required_argument, NULL, ARG_PRECISION       },
                { "max-workers",     required_argument, NULL, ARG_MAX_WORKERS     },
                { "normalize",       no_argument,       NULL, ARG_NORMALIZE       },
                { "no-normalize",    no_argument,       NULL, ARG_NO_NORMALIZE    },
                { "no-truncate",     no_argument,       NULL, ARG_NO_TRUNCATE     },
                { "truncation-direction", required_argument, NULL, ARG_TRUNCATION_DIRECTION },
                { "prompt-name",     required_argument, NULL, ARG_PROMPT_NAME     },
                { "dimensions",      required_argument, NULL, ARG_DIMENSIONS      },
                { "null",            no_argument,       NULL, ARG_NULL            },
                {}
        };
        int c, r;

        /* "+" would stop at the first non-option; we want options anywhere
         * before "--", which ends them (hold's command follows it). */
        while ((c = getopt_long(argc, argv, "hH:q", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("mpool-client %s\n", MPOOL_VERSION);
                        return 0;
                case ARG_SYSTEM:
                        arg_transport = TRANSPORT_SYSTEM;
                        break;
                case ARG_USER:
                        arg_transport = TRANSPORT_USER;
                        break;
                case ARG_ADDRESS:
                        if (!*optarg) {
                                print_error("--address= needs a bus address.");
                                return -EINVAL;
                        }
                        arg_transport = TRANSPORT_ADDRESS;
                        arg_address = optarg;
                        break;
                case 'H':
                        if (!*optarg) {
                                print_error("--host= needs a host name.");
                                return -EINVAL;
                        }
                        arg_transport = TRANSPORT_REMOTE;
                        arg_host = optarg;
                        break;
                case ARG_JSON:
                        if (!optarg || strcmp(optarg, "short") == 0)
                                arg_json = JSON_SHORT;
                        else if (strcmp(optarg, "pretty") == 0)
                                arg_json = JSON_PRETTY;
                        else if (strcmp(optarg, "off") == 0)
                                arg_json = JSON_OFF;
                        else if (strcmp(optarg, "help") == 0) {
                                printf("short\npretty\noff\n");
                                return 0;
                        } else {
                                print_error("Unknown --json= mode '%s'; use short, pretty or off.", optarg);
                                return -EINVAL;
                        }
                        break;
                case ARG_NO_PAGER:
                        arg_no_pager = true;
                        break;
                case ARG_NO_LEGEND:
                        arg_no_legend = true;
                        break;
                case 'q':
                        arg_quiet = true;
                        break;
                case ARG_TIMEOUT: {
                        int64_t sec;

                        r = parse_duration_sec(optarg, &sec);
                        if (r < 0) {
                                print_error("Invalid --timeout= '%s': expected a duration such as 30s, 5min "
                                            "or infinity.", optarg);
                                return -EINVAL;
                        }
                        arg_timeout_set = true;
                        arg_timeout_usec = sec < 0 ? UINT64_MAX : (uint64_t) sec * USEC_PER_SEC;
                        break;
                }
                case ARG_NO_ASK_PASSWORD:
                        arg_ask_password = false;
                        break;
                case ARG_KEEP_ALIVE:
                        r = parse_duration_sec(optarg, &arg_keep_alive_sec);
                        if (r < 0) {
                                print_error("Invalid --keep-alive= '%s': expected a duration such as 90s, "
                                            "1h 30min or infinity.", optarg);
                                return -EINVAL;
                        }
                        arg_keep_alive_set = true;
                        break;
                case ARG_PIN:
                        arg_pin = true;
                        break;
                case ARG_FILES:
                        arg_files = true;
                        break;
                case ARG_FORCE:
                        arg_force = true;
                        break;
                case ARG_ALL:
                        arg_all = true;
                        break;
                case ARG_REVISION:
                        arg_revision = optarg;
                        arg_revision_set = true;
                        break;
                case ARG_PRECISION:
                        if (!ONE_OF(optarg, "f32", "f16", "q8", "q4")) {
                                print_error("Invalid --precision= '%s': use f32, f16, q8 or q4.", optarg);
                                return -EINVAL;
                        }
                        arg_precision = optarg;
                        arg_precision_set = true;
                        break;
                case ARG_MAX_WORKERS: {
                        unsigned n;

                        if (parse_unsigned(optarg, 1, UINT32_MAX, &n) < 0) {
                                print_error("Invalid --max-workers= '%s': expected a number of at least 1.", optarg);
                                return -EINVAL;
                        }
                        arg_max_workers = n;
                        arg_max_workers_set = true;
                        break;
                }
                case ARG_NORMALIZE:
                case ARG_NO_NORMALIZE:
                        arg_normalize = c == ARG_NORMALIZE;
                        arg_normalize_set = true;
                        break;
                case ARG_NO_TRUNCATE:
                        arg_no_truncate = true;
                        break;
                case ARG_TRUNCATION_DIRECTION:
                        if (!ONE_OF(optarg, "right", "left")) {
                                print_error("Invalid --truncation-direction= '%s': use right or left.", optarg);
                                return -EINVAL;
                        }
                        arg_truncation_direction = optarg;
                        arg_truncation_direction_set = true;
                        break;
                case ARG_PROMPT_NAME:
                        if (!*optarg) {
                                print_error("--prompt-name= needs the name of one of the model's prompts.");
                                return -EINVAL;
                        }
                        arg_prompt_name = optarg;
                        arg_prompt_name_set = true;
                        break;
                case ARG_DIMENSIONS: {
                        unsigned n;

                        if (parse_unsigned(optarg, 1, UINT32_MAX, &n) < 0) {
                                print_error("Invalid --dimensions= '%s': expected a number of at least 1.", optarg);
                                return -EINVAL;
                        }
                        arg_dimensions = n;
                        arg_dimensions_set = true;
                        break;
                }
                case ARG_NULL:
                        arg_null = true;
                        break;
                case '?':
                        return -EINVAL;
                default:
                        abort();
                }

        return 1;
}

static const Verb verbs[] = {
        { "status",  1, VERB_ANY, verb_status  },
        { "list",    1, 1,        verb_list    },
        { "load",    2, 2,        verb_load    },
        { "unload",  1, VERB_ANY, verb_unload  },
        { "hold",    3, VERB_ANY, verb_hold    },
        { "monitor", 1, 2,        verb_monitor },
        { "top",     1, 1,        verb_top     },
        { "set",     3, 3,        verb_set     },
        { "inspect", 2, 2,        verb_inspect },
        { "pull",    2, 2,        verb_pull    },
        { "cancel",  2, 2,        verb_cancel  },
        { "register", 3, 3,       verb_register },
        { "rm",      2, 2,        verb_remove  },
        { "embed",   3, VERB_ANY, verb_embed   },
};

/* Options that only mean something to one verb are refused elsewhere, rather
 * than silently ignored. */
static int check_verb_options(const char *verb) {
        const struct {
                bool *set;
                const char *option;
                const char *verbs[2];
        } table[] = {
                { &arg_pin,            "--pin",        { "load" }            },
                { &arg_files,          "--files",      { "hold" }            },
                { &arg_keep_alive_set, "--keep-alive", { "load" }            },
                { &arg_force,          "--force",      { "unload", "rm" }    },
                { &arg_all,            "--all",        { "unload" }          },
                { &arg_revision_set,   "--revision",   { "pull", "inspect" } },
                { &arg_precision_set,  "--precision",  { "load" }            },
                { &arg_max_workers_set, "--max-workers", { "load" }          },
                { &arg_normalize_set,  arg_normalize ? "--normalize" : "--no-normalize", { "embed" } },
                { &arg_no_truncate,    "--no-truncate", { "embed" }          },
                { &arg_truncation_direction_set, "--truncation-direction", { "embed" } },
                { &arg_prompt_name_set, "--prompt-name", { "embed" }         },
                { &arg_dimensions_set, "--dimensions", { "embed" }           },
                { &arg_null,           "--null",       { "embed" }           },
        };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                const char *const *allowed = table[i].verbs;

                if (!*table[i].set || strcmp(verb, allowed[0]) == 0 || (allowed[1] && strcmp(verb, allowed[1]) == 0))
                        continue;
                if (allowed[1])
                        print_error("%s applies to '%s' and '%s' only.", table[i].option, allowed[0], allowed[1]);
                else
                        print_error("%s applies to '%s' only.", table[i].option, allowed[0]);
                return MPOOL_EXIT_USAGE;
        }
        return 0;
}

static int dispatch_verb(int argc, char *argv[]) {
        static char *default_argv[] = { (char *) "status", NULL };
        const Verb *verb = NULL;
        unsigned n;
        int r;

        if (argc <= 0) {
                argc = 1;
                argv = default_argv;
        }

        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                if (strcmp(argv[0], verbs[i].name) == 0) {
                        verb = &verbs[i];
                        break;
                }
        if (!verb) {
                print_error("Unknown command '%s'. See '%s --help'.", argv[0], program_invocation_short_name);
                return MPOOL_EXIT_USAGE;
        }

        n = (unsigned) argc;
        if (n < verb->min_args) {
                print_error("Too few arguments for '%s'. See '%s --help'.", verb->name,
                            program_invocation_short_name);
                return MPOOL_EXIT_USAGE;
        }
        if (verb->max_args != VERB_ANY && n > verb->max_args) {
                print_error("Too many arguments for '%s'. See '%s --help'.", verb->name,
                            program_invocation_short_name);
                return MPOOL_EXIT_USAGE;
        }

        r = check_verb_options(verb->name);
        if (r != 0)
                return r;

        return verb->dispatch(argc, argv);
}

int main(int argc, char *argv[]) {
        int r;

        setlocale(LC_ALL, "");

        r = parse_argv(argc, argv);
        if (r < 0)
                return MPOOL_EXIT_USAGE;
        if (r > 0)
                r = dispatch_verb(argc - optind, argv + optind);

        /* What is still buffered, and anything stdio failed to write before:
         * success is only what reached stdout. */
        if (r == 0) {
                r = fflush_and_check(stdout);
                if (r < 0)
                        print_output_error(r);
        }
        return r < 0 ? MPOOL_EXIT_FAILURE : r;
}
