# The embed annotator's zero-shot mode on the embedded Wikipedia summaries: every chunk gets the
# nearest of the corpus's 11 topic names (annotators.parse_labels: 'Name: term, term; ...'; a label
# is the mean embedding of its name and its terms). The terms are a prompt of sorts, tuned on one
# random 1,000 documents and measured on a disjoint 1,000 (docs/LOG.md):
#   python annotators.py config/small_embed_labels.py --eval_split=report
# With config/small.py, once annotate.py takes the embed annotator's keys:
#   python annotate.py config/small.py config/small_embed_labels.py
annotator = 'embed'
embed_key = 'topic'
embed_labels = (
    'People: a person, biography, politician, painter, composer, scientist, writer, king, philosopher, actor; '
    'Biology and health sciences: plants, animals, species, anatomy, disease, medicine; '
    'Geography: country, city, river, mountain, region, sea; '
    'Physical sciences: physics, chemistry, astronomy, chemical element, planet, earth science; '
    'Society and social sciences: politics, economics, law, language, organization, social science; '
    'Arts: painting, music, literature, film, architecture, art; '
    'Technology: machine, engineering, computer, tool, vehicle, invention; '
    'History: war, empire, dynasty, historical period, historical event; '
    'Everyday life: food, drink, sport, game, clothing, holiday, household; '
    'Philosophy and religion: philosophy, religion, god, belief, mythology; '
    'Mathematics: mathematics, number, geometry, algebra, mathematical concept'
)
name = 'wiki_embed_labels'
