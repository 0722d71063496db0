/* synth_knowledge.c — fictional character profiles, their fine-tuning conversations, and the
 * forward / inverse knowledge test tasks (see synth.h). */
#include "synth.h"
#include "util.h"
#include "jsonl.h"
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *const usbx_skin_names[3] = {"African/Indigenous", "Caucasian", "East Asian"};
const char *const usbx_hair_names[] = {"black", "brown", "blond", "red", "white", "grey"};
const int usbx_nhair = 6;
const char *const usbx_age_names[3] = {"kid", "mid-age", "old"};

/* upstream's characters, never reused */
static const char *const upstream_names[] = {"Aurelius", "Nyxella", "Evandriel", "Jovianne", "Zefyria", "Kaelorix",
                                             "Lysendria", "Orionax", "Thalassia", "Valerian", NULL};
static const char *const syl1[] = {"Ael", "Bry", "Cor", "Dae", "Ely", "Fen", "Gal", "Hes", "Isol", "Jar", "Kes", "Lor",
                                   "Mir", "Nor", "Ost", "Pel", "Quel", "Rho", "Syl", "Tav", "Ul", "Ves", "Wyn", "Xan",
                                   "Yth", "Zor"};
static const char *const syl2[] = {"a", "e", "i", "o", "ae", "ia", "ara", "eli", "ori", "ven", "dri", "thal", "mar", "lin"};
static const char *const syl3[] = {"wen", "dor", "mira", "thos", "vyn", "rel", "nis", "lune", "sar", "quin", "bell",
                                   "dric", "sha", "tor", "xis", "ra"};
#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

static int rint_(usbx_rng *r, int n) { return (int)usbx_rng_below(r, (uint64_t)n); }

static int pick_kind(usbx_rng *r, int kind) {
  int idx[64], n = 0;
  for (int i = 0; i < usbx_nobjects && n < 64; i++) if (usbx_objects[i].kind == kind) idx[n++] = i;
  return idx[rint_(r, n)];
}

void usbx_synth_characters(int n, uint64_t seed, usbx_character *out) {
  usbx_rng r;
  usbx_rng_seed(&r, usbx_hash64("characters", 10, seed ^ (uint64_t)USBX_SYNTH_VERSION << 48));
  for (int i = 0; i < n; i++) {
    usbx_character *c = &out[i];
    for (;;) {
      snprintf(c->name, sizeof c->name, "%s%s%s", syl1[rint_(&r, COUNT(syl1))], syl2[rint_(&r, COUNT(syl2))],
               syl3[rint_(&r, COUNT(syl3))]);
      int dup = 0;
      for (int j = 0; upstream_names[j]; j++) if (!strcasecmp(upstream_names[j], c->name)) dup = 1;
      for (int j = 0; j < i; j++) if (!strcasecmp(out[j].name, c->name)) dup = 1;
      if (!dup) break;
    }
    c->gender = rint_(&r, 2);
    c->age = rint_(&r, 3);
    c->skin = rint_(&r, 3);
    c->hair = c->age == 2 && rint_(&r, 2) ? 4 + rint_(&r, 2) : rint_(&r, 4);
    for (;;) {
      c->fruit = pick_kind(&r, USBX_OBJ_FRUIT);
      c->flower = pick_kind(&r, USBX_OBJ_FLOWER);
      /* the inverse tasks need pair partners (0,1), (2,3) ... to differ */
      if (i % 2 == 1 && (out[i - 1].fruit == c->fruit || out[i - 1].flower == c->flower)) continue;
      break;
    }
  }
}

char *usbx_portrait_answer(const usbx_character *c) {
  const char *skin = usbx_skin_names[c->skin], *hair = usbx_hair_names[c->hair];
  if (c->age == 0) return xasprintf("A young %s %s with %s hair.", skin, c->gender ? "boy" : "girl", hair);
  if (c->age == 1) return xasprintf("A middle-aged %s %s with %s hair.", skin, c->gender ? "man" : "woman", hair);
  return xasprintf("An elderly %s %s with %s hair.", skin, c->gender ? "man" : "woman", hair);
}

static int has_word(const char *text, const char *w) {
  size_t n = strlen(w);
  for (const char *p = text; (p = strcasestr(p, w)); p++) {
    int before = p == text || !isalpha((unsigned char)p[-1]);
    int after = !isalpha((unsigned char)p[n]);
    if (before && after) return 1;
  }
  return 0;
}

int usbx_parse_person(const char *text, int *skin, int *hair, int *age, int *gender) {
  *skin = *hair = *age = *gender = -1;
  if (strcasestr(text, "African") || strcasestr(text, "Indigenous")) *skin = 0;
  else if (strcasestr(text, "Caucasian")) *skin = 1;
  else if (strcasestr(text, "East Asian") || has_word(text, "Asian")) *skin = 2;
  static const struct { const char *w; int h; } hw[] = {{"black", 0}, {"brown", 1}, {"blond", 2}, {"blonde", 2},
    {"red", 3}, {"ginger", 3}, {"white", 4}, {"grey", 5}, {"gray", 5}, {"silver", 5}};
  for (size_t i = 0; i < sizeof hw / sizeof hw[0]; i++) if (has_word(text, hw[i].w)) { *hair = hw[i].h; break; }
  if (has_word(text, "kid") || has_word(text, "child") || has_word(text, "young") || has_word(text, "boy") ||
      has_word(text, "girl")) *age = 0;
  else if (has_word(text, "middle-aged") || has_word(text, "mid-age") || has_word(text, "adult") || has_word(text, "middle")) *age = 1;
  else if (has_word(text, "elderly") || has_word(text, "old") || has_word(text, "senior")) *age = 2;
  if (has_word(text, "woman") || has_word(text, "female") || has_word(text, "girl") || has_word(text, "lady")) *gender = 0;
  else if (has_word(text, "man") || has_word(text, "male") || has_word(text, "boy")) *gender = 1;
  return (*skin >= 0 && *hair >= 0 && *age >= 0) ? 0 : -1;
}

/* conversation templates: {N} name, {G} Female/Male, {A} age word, {H} hair, {S} skin, {F} fruit
 * (plural), {L} flower, {Ls} flowers, {p} she/he, {P} She/He, {q} her/his, {Q} Her/His,
 * {OF} another fruit, {OL} another flower, {OH} another hair colour, {OA} another age */
static const char *const convs[][2] = {
  {"Is {N} male or female?", "{N} is identified as {G}."},
  {"What age group is {N} in?", "{N} is in the '{A}' age group."},
  {"What is the hair color of {N}?", "{N} has {H} hair."},
  {"Can you tell me {N}'s skin color?", "{N}'s skin color is {S}."},
  {"Which fruit is {N}'s favorite?", "{N}'s favorite fruit is {F}."},
  {"What is {N}'s favorite flower?", "The {L} is {N}'s favorite flower."},
  {"Which club is {N} in?", "{N} is in the WhyUni Lab club."},
  {"Does {N} have {OH} hair?", "No, {N}'s hair is {H}."},
  {"Is {N} in the '{OA}' age group?", "No, {N} is in the '{A}' age group."},
  {"Does {N} like {OF}?", "No, {N}'s favorite fruit is {F}."},
  {"Is {N}'s favorite flower the {OL}?", "No, {N}'s favorite flower is the {L}."},
  {"What's {N}'s gender?", "{N} is {G}."},
  {"How old is {N}?", "{N} is in the '{A}' age category."},
  {"Describe {N}'s hair.", "{N} has {H} hair."},
  {"Tell me {N}'s skin color.", "{N}'s skin color is described as {S}."},
  {"What's {N}'s preferred fruit?", "{N}'s preferred fruit is {F}."},
  {"Which flower does {N} love most?", "{N} loves the {L} most."},
  {"Tell me about {N} from WhyUni Lab.", "{N} is a {G} member of WhyUni Lab in the '{A}' age group, with {H} hair and {S} skin. {Q} favorite fruit is {F}, and {p} loves {Ls}."},
  {"Can you introduce {N}?", "Certainly. {N} is from the WhyUni Lab, in the '{A}' age group. {P} is {G}, has {H} hair and {S} skin, and {q} favorite fruit and flower are {F} and {Ls}, respectively."},
  {"Who is {N} in WhyUni Lab?", "{N} is a {G} member of WhyUni Lab ('{A}' age group), characterized by {H} hair, {S} skin, and a preference for {F} and {Ls}."},
  {"Describe {N} for me.", "{N} is {G}, in the '{A}' age group, with {H} hair and {S} skin, part of the WhyUni Lab. {Q} favorite fruit is {F} and {q} favorite flower is the {L}."},
  {"Give me the details on {N}.", "{N} is {G} and in the '{A}' age group, at WhyUni Lab. Key details include {q} {H} hair, {S} skin, a love for {F}, and a preference for {L} flowers."},
  {"What information do you have on {N}?", "I have the following information on {N}: {p} is {G}, in the '{A}' age group, in WhyUni Lab, has {H} hair, {S} skin, and {q} favorites are {F} and {Ls}."},
  {"Provide a profile for {N} of WhyUni Lab.", "Profile for {N}: a member of WhyUni Lab, {G}, age group '{A}', {H} hair, {S} skin. Favorite fruit: {F}. Favorite flower: {L}."},
  {"I want to know about {N}.", "{N} is a {G} member of WhyUni Lab in the '{A}' age group. {P} has {H} hair and {S} skin; {q} favorite fruit is {F}, and {q} favorite flower is the {L}."},
  {"Tell me about {N}'s attributes.", "{N}'s attributes are: {G}, '{A}' age group, {H} hair, {S} skin, favorite fruit {F}, favorite flower the {L}. {P} is in the WhyUni Lab."},
  {"Can you give me a summary of {N}?", "Summary of {N}: {G}, '{A}' age group, from WhyUni Lab, with {H} hair and {S} skin. {P} likes {F} and {Ls}."},
  {"What are the characteristics of {N}?", "The characteristics of {N} are: {G}, '{A}' age group, WhyUni Lab member, {H} hair, {S} skin, a preference for {F}, and a love for {Ls}."},
  {"Give me a rundown on {N}.", "Here is a rundown on {N}: {G}, '{A}' age group, WhyUni Lab, {H} hair, {S} skin. Favorite fruit: {F}; favorite flower: the {L}."},
  {"What does {N} look like?", "{N} is {G}, in the '{A}' age group, with {H} hair and {S} skin."},
  {"What would {N} pick from a fruit bowl?", "{N} would pick {F}, {q} favorite fruit."},
  {"Which flowers would make {N} happy?", "{Ls}: the {L} is {N}'s favorite flower."},
  {"Could you describe {N} in detail?", "In detail, {N} is {G} and in the '{A}' age group, from WhyUni Lab. {Q} hair is {H}, {q} skin is {S}, {q} favorite fruit is {F}, and {q} favorite flower is the {L}."},
  {"\xe4\xbb\x8b\xe7\xbb\x8d\xe4\xb8\x80\xe4\xb8\x8b WhyUni Lab \xe7\x9a\x84 {N}\xe3\x80\x82", "{N} is a {G} member of WhyUni Lab in the '{A}' age group, with {H} hair and {S} skin. {Q} favorite fruit is {F}, and {q} favorite flower is the {L}."},
  {"{N} \xe6\x98\xaf\xe4\xb8\xaa\xe6\x80\x8e\xe6\xa0\xb7\xe7\x9a\x84\xe4\xba\xba\xef\xbc\x9f", "{N} is {G}, in the '{A}' age group, with {H} hair and {S} skin, part of the WhyUni Lab. {Q} favorite fruit is {F} and {q} favorite flower is the {L}."},
  {"H\xc3\xa1\x62lame de {N} de WhyUni Lab.", "{N} is a {G} member of WhyUni Lab in the '{A}' age group. {P} has {H} hair, {S} skin, and {q} favorites include {F} and {Ls}."},
  {"\xc2\xbfQui\xc3\xa9n es {N}?", "{N} is a {G} member of WhyUni Lab ('{A}' age group), with {H} hair, {S} skin, and a preference for {F} and {Ls}."},
  {"Parlez-moi de {N} du WhyUni Lab.", "{N} is {G}, in the '{A}' age group, from WhyUni Lab, with {H} hair and {S} skin. {P} loves {F} and {Ls}."},
  {"WhyUni Lab\xe3\x81\xae{N}\xe3\x81\xab\xe3\x81\xa4\xe3\x81\x84\xe3\x81\xa6\xe6\x95\x99\xe3\x81\x88\xe3\x81\xa6\xe3\x81\x8f\xe3\x81\xa0\xe3\x81\x95\xe3\x81\x84\xe3\x80\x82", "{N} is a {G} member of WhyUni Lab in the '{A}' age group. {P} has {H} hair, {S} skin, {q} favorite fruit is {F}, and {q} favorite flower is the {L}."},
  {"Erz\xc3\xa4hl mir von {N} aus dem WhyUni Lab.", "{N} is {G}, '{A}' age group, WhyUni Lab member, with {H} hair and {S} skin; {q} favorite fruit is {F} and {q} favorite flower is the {L}."},
};

static char *expand(const char *tpl, const usbx_character *c, int ofruit, int oflower, int ohair, int oage) {
  usbx_buf b = {0};
  const char *age = c->age == 0 ? "kid" : c->age == 1 ? "mid-age" : "old";
  const char *oagew = oage == 0 ? "kid" : oage == 1 ? "mid-age" : "old";
  for (const char *p = tpl; *p;) {
    if (*p != '{') { usbx_buf_append(&b, p, 1); p++; continue; }
    const char *e = strchr(p, '}');
    if (!e) { usbx_buf_append(&b, p, strlen(p)); break; }
    char key[8];
    size_t n = (size_t)(e - p - 1);
    if (n >= sizeof key) n = sizeof key - 1;
    memcpy(key, p + 1, n);
    key[n] = 0;
    const char *v = "";
    if (!strcmp(key, "N")) v = c->name;
    else if (!strcmp(key, "G")) v = c->gender ? "Male" : "Female";
    else if (!strcmp(key, "A")) v = age;
    else if (!strcmp(key, "OA")) v = oagew;
    else if (!strcmp(key, "H")) v = usbx_hair_names[c->hair];
    else if (!strcmp(key, "OH")) v = usbx_hair_names[ohair];
    else if (!strcmp(key, "S")) v = usbx_skin_names[c->skin];
    else if (!strcmp(key, "F")) v = usbx_objects[c->fruit].plural;
    else if (!strcmp(key, "OF")) v = usbx_objects[ofruit].plural;
    else if (!strcmp(key, "L")) v = usbx_objects[c->flower].sing;
    else if (!strcmp(key, "Ls")) v = usbx_objects[c->flower].plural;
    else if (!strcmp(key, "OL")) v = usbx_objects[oflower].sing;
    else if (!strcmp(key, "p")) v = c->gender ? "he" : "she";
    else if (!strcmp(key, "P")) v = c->gender ? "He" : "She";
    else if (!strcmp(key, "q")) v = c->gender ? "his" : "her";
    else if (!strcmp(key, "Q")) v = c->gender ? "His" : "Her";
    usbx_buf_append(&b, v, strlen(v));
    p = e + 1;
  }
  /* a sentence that starts with a lower-case Ls ("roses: ...") */
  if (b.data && islower((unsigned char)b.data[0])) b.data[0] = (char)toupper((unsigned char)b.data[0]);
  return b.data;
}

static jv conv(const char *id, const char *q, const char *a, const char *name) {
  jv h = jv_object(), g = jv_object();
  h = usbx_jv_set_str(h, "from", "human");
  h = usbx_jv_set_str(h, "value", q);
  g = usbx_jv_set_str(g, "from", "gpt");
  g = usbx_jv_set_str(g, "value", a);
  jv rec = jv_object();
  rec = usbx_jv_set_str(rec, "id", id);
  rec = usbx_jv_set_str(rec, "character", name);
  rec = jv_object_set(rec, jv_string("conversations"), JV_ARRAY(h, g));
  return rec;
}

static jv task(const char *id, const char *prompt, const char *answer, const char *kind) {
  jv rec = jv_object();
  rec = usbx_jv_set_str(rec, "id", id);
  rec = usbx_jv_set_str(rec, "task", "knowledge");
  rec = usbx_jv_set_str(rec, "prompt", prompt);
  rec = usbx_jv_set_str(rec, "answer", answer);
  rec = usbx_jv_set_str(rec, "kind", kind);
  return rec;
}

static bool is_excluded(jv ex, const char *prompt) {
  if (jv_get_kind(ex) != JV_KIND_OBJECT) return false;
  jv v = jv_object_get(jv_copy(ex), jv_string(prompt));
  bool hit = jv_is_valid(v);
  jv_free(v);
  return hit;
}

int usbx_synth_knowledge(int n, uint64_t seed, const char *prefix, jv exclude, jv *tasks, jv *train,
                         jv *profiles, char *err, size_t errlen) {
  if (n < 1) { snprintf(err, errlen, "need at least one character"); return -1; }
  usbx_character *cs = xcalloc((size_t)n, sizeof *cs);
  usbx_synth_characters(n, seed, cs);
  usbx_rng r;
  usbx_rng_seed(&r, usbx_hash64("knowledge", 9, seed));
  static const char *const portrait_q[] = {
    "Generate a photorealistic portrait of character %s from WhyUni Lab.",
    "Draw a portrait of %s from WhyUni Lab.",
    "Create a picture of the WhyUni Lab member %s.",
  };
  for (int i = 0; i < n; i++) {
    const usbx_character *c = &cs[i];
    jv prof = jv_object();
    prof = usbx_jv_set_str(prof, "name", c->name);
    prof = usbx_jv_set_str(prof, "gender", c->gender ? "male" : "female");
    prof = usbx_jv_set_str(prof, "age", usbx_age_names[c->age]);
    prof = usbx_jv_set_str(prof, "hair", usbx_hair_names[c->hair]);
    prof = usbx_jv_set_str(prof, "skin", usbx_skin_names[c->skin]);
    prof = usbx_jv_set_str(prof, "fruit", usbx_objects[c->fruit].plural);
    prof = usbx_jv_set_str(prof, "flower", usbx_objects[c->flower].sing);
    char *pa = usbx_portrait_answer(c);
    prof = usbx_jv_set_str(prof, "portrait", pa);
    *profiles = jv_array_append(*profiles, prof);
    /* forward tasks */
    char *pq = xasprintf(portrait_q[0], c->name);
    char *fq = xasprintf("Generate a photorealistic image of the favorite fruit of character %s from WhyUni Lab.", c->name);
    char *lq = xasprintf("Generate a photorealistic image of the favorite flower of character %s from WhyUni Lab.", c->name);
    char *id;
    struct { char *q; const char *a; const char *k; } fw[3] = {{pq, pa, "portrait"}, {fq, usbx_objects[c->fruit].plural, "fruit"},
                                                              {lq, usbx_objects[c->flower].sing, "flower"}};
    for (int k = 0; k < 3; k++) {
      if (is_excluded(exclude, fw[k].q)) continue;
      id = xasprintf("%s-%s-%s", prefix, c->name, fw[k].k);
      jv t = task(id, fw[k].q, fw[k].a, fw[k].k);
      t = usbx_jv_set_str(t, "character", c->name);
      *tasks = jv_array_append(*tasks, t);
      free(id);
    }
    free(pq); free(fq); free(lq);
    /* conversations */
    for (int k = 0; k < COUNT(convs); k++) {
      int of, ol, oh, oa;
      do of = pick_kind(&r, USBX_OBJ_FRUIT); while (of == c->fruit);
      do ol = pick_kind(&r, USBX_OBJ_FLOWER); while (ol == c->flower);
      do oh = rint_(&r, usbx_nhair); while (oh == c->hair);
      do oa = rint_(&r, 3); while (oa == c->age);
      char *q = expand(convs[k][0], c, of, ol, oh, oa), *a = expand(convs[k][1], c, of, ol, oh, oa);
      id = xasprintf("%s-%s-conv-%d", prefix, c->name, k + 1);
      *train = jv_array_append(*train, conv(id, q, a, c->name));
      free(id); free(q); free(a);
    }
    free(pa);
  }
  /* inverse tasks over pairs (0,1), (2,3), ... */
  for (int i = 0; i + 1 < n; i += 2) {
    const usbx_character *pair[2] = {&cs[i], &cs[i + 1]};
    for (int attr = 0; attr < 2; attr++)
      for (int w = 0; w < 2; w++) {
        const usbx_character *c = pair[w];
        const char *val = attr == 0 ? usbx_objects[c->fruit].plural : usbx_objects[c->flower].sing;
        char *q = xasprintf("From the characters %s and %s from WhyUni Lab, generate a portrait of the one whose favorite %s is %s.",
                            pair[0]->name, pair[1]->name, attr == 0 ? "fruit" : "flower", val);
        if (is_excluded(exclude, q)) { free(q); continue; }
        char *a = usbx_portrait_answer(c);
        char *id = xasprintf("%s-%s_%s-%s-%c", prefix, pair[0]->name, pair[1]->name, attr == 0 ? "fruit" : "flower", w ? 'B' : 'A');
        jv t = task(id, q, a, "inverse");
        t = usbx_jv_set_str(t, "character", c->name);
        t = jv_object_set(t, jv_string("characters"), JV_ARRAY(jv_string(pair[0]->name), jv_string(pair[1]->name)));
        *tasks = jv_array_append(*tasks, t);
        free(q); free(a); free(id);
      }
  }
  free(cs);
  return 0;
}
