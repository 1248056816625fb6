from pipeline import vocabulary as v


def test_text_maps_onto_canonical_types_in_order_of_mention():
    assert v.text_to_types("A dark, grainy photo taken in heavy rain.") == ["low-light", "noise", "rain"]
    assert v.text_to_types("The image is hazy and slightly out of focus") == ["haze", "blur"]
    assert v.text_to_types("JPEG compression artifacts, blocky sky") == ["jpeg"]


def test_longer_phrases_win_and_negations_are_ignored():
    assert v.text_to_types("raindrops on the lens") == ["raindrop"]
    assert v.text_to_types("no noise, but some motion blur") == ["blur"]
    assert v.text_to_types("The photo is clean and sharp and clear.") == ["clean"]
    assert v.text_to_types("a cat sitting on a sofa") == []


def test_describe_gives_one_canonical_sentence_strongest_first():
    assert v.describe([("noise", 0.2, "σ≈12"), ("rain", 0.8, "")]) == "heavy rain streaks, mild noise (σ≈12)"
    assert v.describe([]) == "clean"


def test_tasks_and_vectors_follow_the_vocabulary():
    assert v.task_for(["rain", "noise"]) == "derain+denoise"
    assert v.task_for(["clean"]) == "identity"
    vec = v.one_hot(["haze"])
    assert len(vec) == len(v.DEGRADATION_TYPES) and vec[v.DEGRADATION_TYPES.index("haze")] == 1.0 and sum(vec) == 1
    try:
        v.check_type("fog")
    except ValueError as e:
        assert "fog" in str(e) and "haze" in str(e)
    else:
        raise AssertionError("an unknown type must be refused")


def test_a_negation_cancels_only_the_phrase_it_governs():
    # A contrast word or clause punctuation ends the negation's reach.
    assert v.text_to_types("The image is not blurry but very noisy") == ["noise"]
    assert v.text_to_types("no noise, heavy rain") == ["rain"]
    assert v.text_to_types("It has no haze; however, it is dark") == ["low-light"]
    assert v.text_to_types("not noisy, although slightly out of focus") == ["blur"]
    assert v.text_to_types("The photo isn't noisy yet it is blocky") == ["jpeg"]
    assert v.text_to_types("without blur") == []
    assert v.text_to_types("not noisy") == []
    # Within its clause a negation governs every phrase it lists.
    assert v.text_to_types("free of noise or blur") == []
    assert v.text_to_types("The image is not blurry. It is very noisy") == ["noise"]


def test_a_negated_list_cancels_every_item_and_a_new_claim_ends_it():
    # An MLLM asked what is wrong answers a clean image this way: nothing may be counted.
    assert v.text_to_types("There is no noise, blur, or compression artifacts.") == []
    assert v.text_to_types("The image is neither blurry nor noisy.") == []
    assert v.text_to_types("free from noise and blur") == []
    assert v.text_to_types("There is no haze, noise, or visible rain streaks.") == []
    assert v.text_to_types("There is no noise or visible blur.") == []
    assert v.text_to_types("The photo shows heavy rain and no noise, blur, or haze.") == ["rain"]
    # A comma ends the negation unless a list of degradations joined by "or"/"nor" follows it; a
    # degree word after "and" or opening a piece starts a claim.
    assert v.text_to_types("There is no noise, the image is blurry or out of focus.") == ["blur"]
    assert v.text_to_types("Don't remove the grain, just remove the rain or haze") == ["rain", "haze"]
    assert v.text_to_types("no haze, rain streaks visible") == ["rain"]
    assert v.text_to_types("Heavy rain, no snow, slight fog or haze") == ["rain", "haze"]
    assert v.text_to_types("no noise and heavy rain") == ["rain"]
    # "Lacks" names a missing quality, as often as a missing degradation.
    assert v.text_to_types("The image lacks sharpness and is blurry") == ["blur"]
