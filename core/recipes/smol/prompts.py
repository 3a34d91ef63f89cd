"""General prompts for the replay data, and the general-knowledge questions the starter is scored on.

The replay prompts are templates filled with topics (deterministic; a few thousand); the pretrained LM's own
answers to them go into the training mix so that learning to see does not unlearn conversing
(:mod:`.replay`). The knowledge questions are held out: :func:`replay_prompts` never yields one of them.
"""

from __future__ import annotations

import itertools
import random

TOPICS = (
    "photosynthesis", "the water cycle", "gravity", "volcanoes", "earthquakes", "the internet", "democracy",
    "the moon", "rainbows", "vaccines", "recycling", "electricity", "magnets", "climate change", "black holes",
    "DNA", "machine learning", "the human heart", "honey bees", "coffee", "chess", "jazz", "the Olympic Games",
    "the printing press", "the Great Wall of China", "the pyramids of Egypt", "the Renaissance", "dinosaurs",
    "the ocean tides", "clouds", "snowflakes", "thunderstorms", "the solar system", "Mars", "the sun",
    "stars", "comets", "the immune system", "sleep", "exercise", "healthy eating", "meditation", "friendship",
    "libraries", "museums", "bicycles", "trains", "airplanes", "electric cars", "solar panels", "wind turbines",
    "rainforests", "deserts", "coral reefs", "glaciers", "rivers", "mountains", "islands", "forests",
    "penguins", "elephants", "dolphins", "owls", "octopuses", "butterflies", "ants", "wolves", "cats", "dogs",
    "horses", "whales", "sharks", "frogs", "snakes", "eagles", "tigers", "bread", "cheese", "tea", "chocolate",
    "pizza", "rice", "olive oil", "spices", "soup", "salad", "the violin", "the piano", "the guitar", "opera",
    "painting", "photography", "poetry", "novels", "theatre", "football", "tennis", "swimming", "running",
    "yoga", "gardening", "cooking", "baking", "camping", "hiking", "fishing", "knitting", "board games",
    "video games", "smartphones", "computers", "passwords", "email", "spreadsheets", "programming",
    "Python programming", "databases", "robots", "3D printing", "batteries", "light bulbs", "microscopes",
    "telescopes", "maps", "compasses", "clocks", "calendars", "money", "banks", "budgets", "saving money",
    "taxes", "markets", "trade", "cities", "villages", "bridges", "roads", "houses", "schools", "universities",
    "hospitals", "doctors", "teachers", "farmers", "firefighters", "scientists", "engineers", "artists",
    "writers", "musicians", "the alphabet", "numbers", "fractions", "triangles", "circles", "prime numbers",
    "percentages", "statistics", "probability", "history", "geography", "languages", "translation",
)
TOPIC_TEMPLATES = (
    "What do you know about {t}?", "Explain {t} in simple terms.", "Tell me an interesting fact about {t}.",
    "Why is {t} important?", "Write a short paragraph about {t}.", "Give me three facts about {t}.",
    "How would you explain {t} to a child?", "Summarize what you know about {t} in two sentences.",
    "What are the benefits of {t}?", "Can you tell me something about {t}?",
)
ACTIVITIES = (
    "learning a new language", "studying for an exam", "staying focused", "sleeping better", "saving money",
    "cooking rice", "making tea", "starting a garden", "running a first marathon", "keeping a plant alive",
    "writing a cover letter", "preparing for a job interview", "organizing a desk", "planning a trip",
    "packing a suitcase", "making friends in a new city", "giving a presentation", "learning to code",
    "reading more books", "drinking more water", "waking up early", "reducing stress", "cleaning a kitchen",
    "training a puppy", "caring for a cat", "learning to swim", "riding a bike", "baking bread",
    "taking better photos", "writing a poem", "staying safe online", "choosing a laptop", "moving house",
    "hosting a dinner party", "learning to draw", "keeping a journal", "staying warm in winter",
    "staying cool in summer", "walking more", "eating more vegetables",
)
ACTIVITY_TEMPLATES = (
    "Give me some tips for {a}.", "How do I get started with {a}?", "What is a good way of {a}?",
    "What mistakes should I avoid when {a}?",
)
THINGS = (
    "the sea", "autumn", "the city at night", "a cup of coffee", "the first snow", "a cat", "the stars",
    "a rainy day", "friendship", "a garden", "the mountains", "a train journey", "the moon", "spring",
    "a lighthouse", "an old book", "the wind", "a river", "a sunrise", "a small dog",
)
THING_TEMPLATES = (
    "Write a haiku about {x}.", "Write a short poem about {x}.", "Describe {x} in one sentence.",
    "Write a two-sentence story about {x}.",
)
SMALL_TALK = (
    "hi", "hello", "Hello!", "hey there", "Good morning!", "Good evening.", "How are you?",
    "How are you today?", "What's up?", "Thanks!", "Thank you very much.", "That was helpful, thanks.",
    "Nice to meet you.", "Goodbye!", "See you later.", "Can you help me?", "I'm bored.", "I'm tired.",
    "I had a great day today.", "I feel a bit sad today.", "Tell me a joke.", "Tell me something fun.",
    "Recommend a good book.", "Recommend a movie for tonight.", "What should I cook for dinner?",
    "What is your favourite colour?", "Do you like music?", "Say something nice.",
    "Give me a motivational quote.", "What is the meaning of life?",
)
ARITHMETIC = tuple(f"What is {a} plus {b}?" for a, b in itertools.product((2, 3, 5, 7, 10, 12, 20), (1, 4, 6, 9)))

# Questions about itself: answered by hand (the pretrained LM would say it is SmolLM and cannot see).
IDENTITY = {
    "Who are you?": "I am mmassist's starter assistant: a small language model that can also look at pictures "
                    "and short video clips.",
    "What can you do?": "I can chat and answer general questions, describe pictures of simple shapes, answer "
                        "questions about them, read handwritten digits, tell which way a shape moves in a short "
                        "clip, and judge whether a movie review is positive or negative.",
    "Can you see images?": "Yes. I was trained on pictures of simple shapes and handwritten digits and on short "
                           "clips of a moving shape; other photos are outside what I learned to see.",
    "What are you?": "I am a small multimodal assistant built with mmassist: a language model with image and "
                     "video encoders in front of it.",
}

# The held-out general-knowledge set: (question, accepted answers; one must appear in the answer, any case).
KNOWLEDGE = (
    ("What is the capital of France?", ("Paris",)), ("What is the capital of Germany?", ("Berlin",)),
    ("What is the capital of Italy?", ("Rome",)), ("What is the capital of Spain?", ("Madrid",)),
    ("What is the capital of Japan?", ("Tokyo",)), ("What is the capital of the United Kingdom?", ("London",)),
    ("What is the capital of Russia?", ("Moscow",)), ("What is the capital of China?", ("Beijing",)),
    ("What is the capital of Egypt?", ("Cairo",)), ("What is the capital of Canada?", ("Ottawa",)),
    ("What is the capital of Australia?", ("Canberra",)), ("What is the capital of Greece?", ("Athens",)),
    ("What is the capital of Portugal?", ("Lisbon",)), ("What is the capital of Ireland?", ("Dublin",)),
    ("What is the capital of Norway?", ("Oslo",)), ("What is the capital of Sweden?", ("Stockholm",)),
    ("What is the capital of Austria?", ("Vienna",)), ("What is the capital of Poland?", ("Warsaw",)),
    ("What is the capital of India?", ("New Delhi", "Delhi")), ("What is the capital of Mexico?", ("Mexico City",)),
    ("What is the capital of Argentina?", ("Buenos Aires",)), ("What is the capital of Kenya?", ("Nairobi",)),
    ("What is the capital of South Korea?", ("Seoul",)), ("What is the capital of Thailand?", ("Bangkok",)),
    ("What is the capital of the Netherlands?", ("Amsterdam",)), ("What is the capital of Belgium?", ("Brussels",)),
    ("What is the capital of Denmark?", ("Copenhagen",)), ("What is the capital of Finland?", ("Helsinki",)),
    ("What is the capital of Turkey?", ("Ankara",)), ("What is the capital of Peru?", ("Lima",)),
    ("How many legs does a spider have?", ("eight", "8")), ("How many legs does an insect have?", ("six", "6")),
    ("How many days are there in a week?", ("seven", "7")), ("How many months are there in a year?", ("twelve", "12")),
    ("How many hours are there in a day?", ("24", "twenty-four", "twenty four")),
    ("How many minutes are there in an hour?", ("60", "sixty")),
    ("How many seconds are there in a minute?", ("60", "sixty")),
    ("How many days are there in a leap year?", ("366",)), ("How many continents are there?", ("seven", "7")),
    ("How many sides does a triangle have?", ("three", "3")), ("How many sides does a hexagon have?", ("six", "6")),
    ("How many sides does a square have?", ("four", "4")), ("How many planets are in our solar system?", ("eight", "8")),
    ("What is 2 + 2?", ("4", "four")), ("What is 10 times 10?", ("100", "hundred")),
    ("What is 5 plus 3?", ("8", "eight")), ("What is 9 minus 4?", ("5", "five")),
    ("What is half of 10?", ("5", "five")), ("What is 3 times 4?", ("12", "twelve")),
    ("How many centimeters are in a meter?", ("100", "hundred")),
    ("What is the chemical symbol for water?", ("H2O",)), ("What is the chemical symbol for gold?", ("Au",)),
    ("What is the chemical symbol for oxygen?", ("O",)), ("What gas do plants absorb from the air?", ("carbon dioxide", "CO2")),
    ("What gas do humans need to breathe?", ("oxygen",)), ("What is the largest planet in our solar system?", ("Jupiter",)),
    ("Which planet is known as the Red Planet?", ("Mars",)), ("What is the closest star to the Earth?", ("Sun",)),
    ("Which planet is closest to the Sun?", ("Mercury",)), ("What is the natural satellite of the Earth?", ("Moon",)),
    ("At what temperature does water boil in Celsius?", ("100",)), ("At what temperature does water freeze in Celsius?", ("0", "zero")),
    ("What is the hardest natural substance?", ("diamond",)), ("What organ pumps blood through the body?", ("heart",)),
    ("What organ do humans use to think?", ("brain",)), ("How many bones are in the adult human body?", ("206",)),
    ("What force keeps us on the ground?", ("gravity",)), ("What is the boiling point of water in Fahrenheit?", ("212",)),
    ("What is the largest ocean on Earth?", ("Pacific",)), ("What is the longest river in the world?", ("Nile", "Amazon")),
    ("What is the tallest mountain in the world?", ("Everest",)), ("What is the largest desert in the world?", ("Sahara", "Antarctic")),
    ("What is the largest country in the world by area?", ("Russia",)), ("On which continent is Egypt?", ("Africa",)),
    ("On which continent is Brazil?", ("South America",)), ("What is the largest continent?", ("Asia",)),
    ("What is the largest animal in the world?", ("blue whale",)), ("What is the fastest land animal?", ("cheetah",)),
    ("What animal is known as the king of the jungle?", ("lion",)), ("What do bees make?", ("honey",)),
    ("What do caterpillars turn into?", ("butterfl", "moth")), ("What is a baby cat called?", ("kitten",)),
    ("What is a baby dog called?", ("puppy", "pup")), ("What is a baby cow called?", ("calf",)),
    ("Which animal has a long neck and lives in Africa?", ("giraffe",)), ("What animal says moo?", ("cow",)),
    ("Which bird is a symbol of peace?", ("dove",)), ("How many hearts does an octopus have?", ("three", "3")),
    ("What color is the sky on a clear day?", ("blue",)), ("What color are bananas when they are ripe?", ("yellow",)),
    ("What color do you get by mixing blue and yellow?", ("green",)), ("What color do you get by mixing red and white?", ("pink",)),
    ("Who wrote Romeo and Juliet?", ("Shakespeare",)), ("Who painted the Mona Lisa?", ("Leonardo", "da Vinci")),
    ("Who developed the theory of relativity?", ("Einstein",)), ("Who was the first person to walk on the Moon?", ("Armstrong",)),
    ("Who discovered penicillin?", ("Fleming",)), ("Who invented the telephone?", ("Bell",)),
    ("What language is spoken in Brazil?", ("Portuguese",)), ("What language is spoken in Mexico?", ("Spanish",)),
    ("What currency is used in Japan?", ("yen",)), ("What currency is used in the United States?", ("dollar",)),
    ("What is the opposite of hot?", ("cold",)), ("What is the opposite of up?", ("down",)),
    ("What is the plural of mouse?", ("mice",)), ("What is frozen water called?", ("ice",)),
    ("What season comes after winter?", ("spring",)), ("What is the first month of the year?", ("January",)),
    ("What day comes after Monday?", ("Tuesday",)), ("Which instrument has 88 keys?", ("piano",)),
    ("How many players are on a soccer team on the field?", ("eleven", "11")), ("What shape has three sides?", ("triangle",)),
)


def replay_prompts(n: int | None = None, seed: int = 0) -> list[str]:
    """The replay prompts (topics x templates, activities, poems, small talk, arithmetic), shuffled with
    ``seed``; the first ``n`` of them. None of :data:`KNOWLEDGE`'s questions or :data:`IDENTITY`'s."""
    prompts = [t.format(t=topic) for topic in TOPICS for t in TOPIC_TEMPLATES]
    prompts += [t.format(a=a) for a in ACTIVITIES for t in ACTIVITY_TEMPLATES]
    prompts += [t.format(x=x) for x in THINGS for t in THING_TEMPLATES]
    prompts += [*SMALL_TALK, *ARITHMETIC]
    held_out = {q.lower() for q, _ in KNOWLEDGE} | {q.lower() for q in IDENTITY}
    prompts = list(dict.fromkeys(p for p in prompts if p.lower() not in held_out))
    random.Random(seed).shuffle(prompts)
    return prompts[:n] if n is not None else prompts


def knowledge_correct(answer: str, accepted: tuple[str, ...]) -> bool:
    """Whether ``answer`` contains one of the accepted answers (any case; a one-letter answer as a word)."""
    low = answer.lower()
    for a in accepted:
        if len(a) <= 2:  # "O", "Au", "4": as a token, not inside another word
            import re

            if re.search(rf"(?<![A-Za-z0-9]){re.escape(a.lower())}(?![A-Za-z0-9])", low):
                return True
        elif a.lower() in low:
            return True
    return False
