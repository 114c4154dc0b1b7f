"""Small word lists for the synthetic FBS population (see ``fbs_debitor.sandbox.generator``).

Everything here is invented or common Danish vocabulary: the municipalities, postal districts and
institutions do not exist, so generated data can never be mistaken for a real library's patrons.
The lists are short on purpose (tens of entries): combinations give enough variety.
"""

from __future__ import annotations

FEMALE_FIRST_NAMES = (
    "Anne", "Kirsten", "Mette", "Hanne", "Helle", "Susanne", "Lene", "Maria", "Marianne", "Camilla",
    "Louise", "Charlotte", "Pia", "Tina", "Bente", "Emma", "Ida", "Freja", "Clara", "Sofie", "Alma",
    "Ella", "Agnes", "Karla", "Laura", "Josefine", "Mathilde", "Astrid", "Signe", "Sørine", "Åse",
)

MALE_FIRST_NAMES = (
    "Peter", "Jens", "Lars", "Michael", "Henrik", "Thomas", "Søren", "Jan", "Niels", "Rasmus",
    "Martin", "Anders", "Morten", "Jesper", "Christian", "William", "Noah", "Oscar", "Lucas", "Carl",
    "Alfred", "Emil", "Valdemar", "Aksel", "Frederik", "Magnus", "Malthe", "Bjørn", "Ølver", "Åge",
)

FEMALE_MIDDLE_NAMES = ("Marie", "Louise", "Sofie", "Kristine", "Emilie")

MIDDLE_NAMES = ("Juul", "Bach", "Krogh", "Holm", "Dam", "Bjerg", "Lund", "Skov", "Bæk")

SURNAMES = (
    "Nielsen", "Jensen", "Hansen", "Pedersen", "Andersen", "Christensen", "Larsen", "Sørensen",
    "Rasmussen", "Jørgensen", "Petersen", "Madsen", "Kristensen", "Olsen", "Thomsen", "Christiansen",
    "Poulsen", "Johansen", "Møller", "Mortensen", "Knudsen", "Jakobsen", "Mikkelsen", "Olesen",
    "Frederiksen", "Laursen", "Henriksen", "Lund", "Schmidt", "Eriksen", "Holm", "Kristiansen",
    "Clausen", "Simonsen", "Svendsen", "Andreasen", "Iversen", "Østergaard", "Jeppesen", "Vestergaard",
    "Nissen", "Lauridsen", "Kjær", "Jepsen", "Mogensen", "Søndergaard", "Bæk", "Ærø",
)

STREET_NAMES = (
    "Algade", "Østergade", "Vestergade", "Nørregade", "Søndergade", "Skolevej", "Kirkevej", "Møllevej",
    "Engvej", "Bøgevej", "Egevej", "Birkevej", "Ahornvej", "Granvej", "Rosenvænget", "Lærkevej",
    "Vibevej", "Stationsvej", "Havnegade", "Strandvejen", "Åbrinken", "Bakkedraget", "Kildevej",
    "Markvej", "Præstevænget", "Smedegade", "Tværgade", "Fælledvej", "Enghavevej", "Skovbrynet",
    "Søvej", "Ved Gadekæret", "Mosevej", "Lindealle", "Æblehaven", "Ørnevej",
)

FLOORS = ("", "", "", "", "st. tv.", "st. th.", "1. tv.", "1. th.", "2. tv.", "2. th.", "3. mf.")

# Fictional municipalities, one per synthetic FBS agency, with their (fictional) postal districts.
MUNICIPALITIES = {
    "Nordstrand": (("4610", "Nordstrand"), ("4611", "Nordstrand Øst"), ("4615", "Klitby"),
                   ("4618", "Sandholm"), ("4619", "Vesterklit")),
    "Søvang": (("5720", "Søvang"), ("5722", "Ådalen"), ("5725", "Birkelund"), ("5727", "Lyngå")),
    "Egeby": (("7340", "Egeby"), ("7342", "Egeby Nord"), ("7345", "Hedeby"), ("7348", "Mølleå")),
    "Lyngmose": (("8830", "Lyngmose"), ("8832", "Tørvemose"), ("8835", "Kærby")),
    "Havrevig": (("9470", "Havrevig"), ("9472", "Fiskerleje"), ("9475", "Østervig")),
}

BRANCH_NAMES = (
    ("Hovedbiblioteket", "hovedbiblioteket"),
    ("Filial Nord", "filial-nord"),
    ("Filial Syd", "filial-syd"),
    ("Bogbussen", "bogbussen"),
    ("Havnens Bibliotek", "havnens-bibliotek"),
)

# Companies and institutions (T5). {s} = a surname, {f} = a flower/tree, {m} = the municipality.
FIRM_TEMPLATES = (
    "Tømrerfirmaet {s} ApS", "{s}s Malerforretning I/S", "Murermester {s} A/S", "{s} & Søn ApS",
    "Revisionsfirmaet {s} P/S", "Vognmand {s}", "Frisør {f}", "Café {f} ApS", "{s} Byg A/S",
    "Advokatfirmaet {s}", "Blomsterbutikken {f}", "Tandlægerne i {m} I/S",
)

INSTITUTION_TEMPLATES = (
    "Børnehaven {f}", "Vuggestuen {f}", "Plejecenter {f}", "Friskolen i {m}", "Efterskolen {f}",
    "Foreningen {f}s Venner", "Højskolen ved {m} Strand", "Menighedsrådet i {m}",
)

MUNICIPAL_TEMPLATES = (
    "{m} Kommune, Skoletjenesten", "{m} Kommune, Dagtilbud", "{m} Kommune, Ældreplejen",
    "{m} Kommune, Sprogcentret",
)

# Patron groups (lånergrupper, T4).
GROUP_TEMPLATES = (
    "Læsekreds {f}", "Skoleklasse {c}, {m} Skole", "Dagplejegruppen {f}", "Bogklubben {f}",
    "Lektiecaféen {m}", "Strikkeklubben {f}", "Skoleklasse {c}, Friskolen",
)

CLASS_NAMES = ("0A", "1B", "2A", "3C", "4A", "5B", "6A", "7B", "8C", "9A")

FLOWERS = (
    "Mælkebøtten", "Solsikken", "Rosen", "Kornblomsten", "Egetræet", "Bøgen", "Lærken", "Mågen",
    "Skovsneglen", "Valmuen", "Kastanjen", "Æbletræet", "Pilen", "Anemonen",
)

# DK5 classifications (fiction 'sk', children's fiction, non-fiction groups, biographies 99.4).
DK5_CLASSIFICATIONS = (
    "sk", "sk", "sk", "sk", "sk", "83.8", "85", "86-096", "61.3", "61.6", "64.1", "30.1", "32.2",
    "40.6", "46.4", "48.5", "55.4", "59.7", "63.3", "64.7", "77.7", "78.9", "79.41", "91.8", "96.72",
    "99.4",
)

BIOGRAPHY_SUBJECTS = (
    "Andersen", "Blixen", "Kierkegaard", "Bohr", "Nielsen", "Ditlevsen", "Brandes", "Kingo",
    "Krøyer", "Jacobsen", "Hammershøi", "Ørsted",
)

AUTHORS = (
    "Andersen, H.C.", "Blixen, Karen", "Ditlevsen, Tove", "Bang, Herman", "Pontoppidan, Henrik",
    "Hein, Piet", "Jensen, Johannes V.", "Nexø, Martin Andersen", "Kirk, Hans", "Branner, H.C.",
    "Sønderby, Knud", "Holm, Sven", "Nors, Dorthe", "Madsen, Svend Åge", "Rifbjerg, Klaus",
    "Bødker, Cecil", "Lindgren, Astrid", "Ørum, Poul", "Ægidius, Jens", "Krogh, Ellen",
    "Skov, Marie", "Lund, Per", "Bæk, Anna", "Holst, Nanna", "Winther, Søs",
)

TITLE_FIRST = (
    "Havet ved", "Sommeren på", "Natten i", "Vejen til", "Huset på", "Drømmen om", "Brevene fra",
    "Lyset over", "Stilheden i", "Skyggerne på", "Fortællinger fra", "Vinteren i", "Pigen fra",
    "Manden fra", "Hemmeligheden på", "Kokkens bog om",
)

TITLE_SECOND = (
    "Skagen", "Bornholm", "Fanø", "Ærø", "heden", "fjorden", "bakken", "marken", "Møn", "Læsø",
    "havnen", "skoven", "Limfjorden", "Vesterhavet", "kirkegården", "mosen", "Østerbro",
)

NONFICTION_TITLES = (
    "Dansk havebrug", "Strik til hele familien", "Fuglene i Danmark", "Lær Python på en uge",
    "Kagebogen", "Danmarks historie i korte træk", "Fodbold for begyndere", "Sådan passer du din hund",
    "Astronomi for alle", "Sprogbrug og retskrivning", "Min første atlas", "Byg selv et drivhus",
)

FEE_AMOUNTS_DKK = (10, 20, 30, 50, 75, 120, 200)
FEE_WEIGHTS = (0.10, 0.24, 0.20, 0.20, 0.10, 0.11, 0.05)
