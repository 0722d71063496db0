/* synth.h — the synthetic UniSandbox task generators (math, mapping, knowledge), the exact
 * arithmetic evaluator, mapping-chain resolution and the task checker behind `usbx-synth`.
 *
 * Everything here is deterministic: a generator's output depends only on its parameters, the seed
 * and USBX_SYNTH_VERSION.  Every answer is computed (and re-checked by parsing the emitted prompt
 * with the same evaluator the checker uses), never looked up. */
#ifndef USBX_SYNTH_H
#define USBX_SYNTH_H
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <jv.h>

#define USBX_SYNTH_VERSION 1

/* ---- object catalogue (names; the renderer gives each a procedural icon) ---- */
enum { USBX_OBJ_THING = 0, USBX_OBJ_FRUIT = 1, USBX_OBJ_FLOWER = 2 };
typedef struct {
  const char *sing, *plural;  /* "teddy bear", "teddy bears"; "mouse", "mice" */
  int kind;                   /* USBX_OBJ_* */
  const char *category;       /* "toy", "utensil", "fruit", ... (used in mapping asks) */
} usbx_object;
extern const usbx_object usbx_objects[];
extern const int usbx_nobjects;
/* Index of the object named `name` (singular or plural, case-insensitive, optional leading
 * article "a"/"an"/"the"), or -1.  *is_plural (may be NULL) tells which form matched (a name
 * whose singular and plural are equal, like "fish", reports singular). */
int usbx_object_find(const char *name, bool *is_plural);
/* "1 kitten", "3 kittens" (no trailing period); caller frees. */
char *usbx_count_phrase(int n, int obj);

/* ---- exact arithmetic ---- */
/* Evaluates an arithmetic expression as it appears in a prompt: integers, + - * / (× ÷ x too),
 * % (remainder), ^ and ² ³ (powers), √N and √(...) (square root), parentheses, and worded forms
 * ("the square root of 9 plus 1 minus 2", "7 divided by 2, then rounded down, plus 1",
 * "4 squared", "then add 2", "where M = 1").  Standard precedence (√ and ^ bind tightest, then
 * * / %, then + -); ", then ..." applies to everything before it.  Values are exact rationals.
 * Returns 0 and the value (num/den, den > 0, reduced) when defined; 1 when the expression is well
 * formed but undefined (division by zero, non-integer remainder operands, irrational root,
 * overflow) with a reason in why; -1 when it cannot be parsed (reason in why). */
int usbx_expr_eval(const char *text, int64_t *num, int64_t *den, char *why, size_t whylen);

/* ---- math tasks ---- */
/* Appends `n` math task records of level 1..3 (ids "<prefix>-<i>" numbered from 1) to *out, a
 * jv array.  Results are integers in 1..4 (levels 1 and 2) or 1..5 (level 3).  Prompts listed in
 * exclude (an object of prompt -> true, or jv_invalid()) are never emitted.  0 ok, -1 when not
 * enough distinct prompts could be made (message in err). */
int usbx_synth_math(int level, int n, uint64_t seed, const char *prefix, jv exclude, jv *out,
                    char *err, size_t errlen);

/* ---- mapping tasks ---- */
/* Appends n groups (2n records: <prefix>-<g>_A and _B, group "<prefix>-<g>") of `level` hops:
 * 2, 4 or 6 shuffled rules binding symbols, letters and digits to objects. */
int usbx_synth_mapping(int level, int n, uint64_t seed, const char *prefix, jv exclude, jv *out,
                       char *err, size_t errlen);
/* Resolves a mapping prompt ("Rule 1: ... Please generate the X represented by the letter 'C'.").
 * Returns 0 with the object phrase (malloc'd, as written in the rule, without article) in *obj;
 * 1 when the chain is broken (undefined symbol, cycle, conflicting rules); -1 when the prompt
 * cannot be parsed.  why gets the reason (and, on success, the chain "C -> $ -> phone"). */
int usbx_mapping_resolve(const char *prompt, char **obj, char *why, size_t whylen);

/* ---- knowledge tasks ---- */
typedef struct {
  char name[32];
  int gender;       /* 0 female, 1 male */
  int age;          /* 0 kid, 1 mid-age, 2 old */
  int hair;         /* index into usbx_hair_names */
  int skin;         /* 0 African/Indigenous, 1 Caucasian, 2 East Asian */
  int fruit;        /* object index (kind FRUIT) */
  int flower;       /* object index (kind FLOWER) */
} usbx_character;
extern const char *const usbx_skin_names[3];
extern const char *const usbx_hair_names[];
extern const int usbx_nhair;
extern const char *const usbx_age_names[3];   /* "kid", "mid-age", "old" */
/* Makes n distinct characters (distinct names) from seed. */
void usbx_synth_characters(int n, uint64_t seed, usbx_character *out);
/* "A middle-aged East Asian woman with brown hair." (caller frees). */
char *usbx_portrait_answer(const usbx_character *c);
/* Appends to *tasks the forward tasks (portrait, fruit, flower) of every character and the
 * inverse tasks of consecutive pairs (0,1), (2,3), ...; to *train the fine-tuning conversations
 * (about 40 per character).  Records carry `character` (and `characters` for pairs). */
int usbx_synth_knowledge(int n, uint64_t seed, const char *prefix, jv exclude, jv *tasks, jv *train,
                         jv *profiles, char *err, size_t errlen);
/* Parses a person description ("An elderly Caucasian man with white hair.") into attributes;
 * -1 for an attribute the text does not state (gender of "kid").  Returns 0 when skin, hair and
 * age were found, -1 otherwise. */
int usbx_parse_person(const char *text, int *skin, int *hair, int *age, int *gender);

/* ---- checking ---- */
/* Checks one task record (ours or upstream: prompt / Question / Question_A / Question_B).
 * kind: "math", "mapping" or NULL (guess from the record's `task` or the prompt).  Returns 0 when
 * the item checks out, 1 when it has a problem (then *problem is a jv object with problem, reason,
 * expected), -1 when the record is not a checkable task (knowledge, free: *problem untouched). */
int usbx_check_record(jv rec, const char *kind, jv *problem);
/* Character profiles for checking knowledge tasks, gathered from fine-tuning conversations (ours
 * or upstream's data/knowledge files: each attribute is the majority of what the answers say) or
 * from our profile records (usbx-synth knowledge --profiles).  The character of an upstream
 * conversation file is named by the file ("Aurelius.jsonl", "Aurelius_Nyxella.jsonl"). */
typedef struct usbx_profiles usbx_profiles;
usbx_profiles *usbx_profiles_load(const char *const *paths, int n, char *err, size_t errlen);
void usbx_profiles_free(usbx_profiles *p);
/* The profile of a character as a portrait sentence etc.; 0 when known. */
int usbx_profiles_get(const usbx_profiles *p, const char *name, usbx_character *out);
/* Checks a knowledge task (portrait, favourite fruit/flower, inverse pair) against the profiles:
 * 0 ok, 1 problem (*problem set), -1 not a knowledge task. */
int usbx_check_knowledge(jv rec, const usbx_profiles *p, jv *problem);

/* Checks a whole file; writes one problem record per bad item to out (each with file, line, id);
 * adds to the counters.  Mapping pairs (same ID/group) are also checked to share their rules.
 * Knowledge items are checked when profiles are given (else counted as skipped).
 * Returns 0 when every item checks out, 1 when any problem was found, -1 when the file could not
 * be read (message in err). */
int usbx_check_file(const char *path, const usbx_profiles *prof, FILE *out, long *nitems, long *nproblems,
                    long *nskipped, char *err, size_t errlen);

/* ---- helpers shared by generators, renderer and judge ---- */
/* Lower-cases ASCII in place and trims spaces and a trailing '.'; returns s. */
char *usbx_norm_word(char *s);
/* Parses "3 kittens." / "1 eraser" into count and object phrase; object may be unknown (then
 * *obj = -1 and *noun holds the phrase, caller frees).  Returns 0 ok, -1 if no leading count. */
int usbx_parse_count_answer(const char *ans, int *count, int *obj, char **noun);
/* True when two object names denote the same thing: equal after normalisation, or singular and
 * plural of one catalogue object, or equal after dropping a final "s"/"es". */
bool usbx_same_object(const char *a, const char *b);

#endif
