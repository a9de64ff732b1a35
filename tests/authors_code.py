"""The authors' reading and note-splitting functions, copied verbatim from ../shared/reference_protocol.md.

Tests compute their expectations with these (the oracle), never with mub's own
helpers; ``tests/test_reference_reading.py`` checks that each body is
character for character in the shared reference. The explicit and implicit
scripts both name their reader ``extract_option``; here they are
``extract_option_explicit`` (utils.py, letters A-D) and
``extract_option_implicit`` (implicit/Implicit_MR_test/utils.py, A-H).
"""
# ruff: noqa
import re


# utils.py
def extract_option_explicit(response, question):
    # 提取选项及其描述
    options_pattern = r'\b([A-D]): ([^,]+)(?:,|$)'
    options = re.findall(options_pattern, question)
    
    # 检查响应是否完全匹配某个选项
    for option in options:
        option_letter = option[0]
        option_text = option[1].strip()
        if option_text in response:
            return option_letter

    # 如果响应中没有完全匹配的选项，检查是否有选项字母存在于响应中
    letter_pattern = r'\b([A-D])\b'
    match = re.search(letter_pattern, response)
    if match:
        return match.group(1)

    return response.replace(' ', '').lower()


# implicit/Implicit_MR_test/utils.py
def extract_option_implicit(response, question):
    # 提取选项及其描述
    options_pattern = r'\b([A-H]): ([^,]+)(?:,|$)'
    options = re.findall(options_pattern, question)
    
    # 检查响应是否完全匹配某个选项
    for option in options:
        option_letter = option[0]
        option_text = option[1].strip()
        if option_text in response:
            return option_letter

    # 如果响应中没有完全匹配的选项，检查是否有选项字母存在于响应中
    letter_pattern = r'\b([A-H])\b'
    match = re.search(letter_pattern, response)
    if match:
        return match.group(1)

    return response.replace(' ', '').lower()


# implicit/Implicit_MR_test/utils.py
def seg_note(input_string):
    # 以"///"分割字符串
    elements = input_string.split("///")
    
    processed_elements = []
    for element in elements:
        # 去除元素的开头和结尾空格
        stripped_element = element.strip()
        
        # 如果开头有数字加点（如"1. "或"2. "），将其删除
        stripped_element = re.sub(r'^\d+\.\s*', '', stripped_element)
        
        processed_elements.append(stripped_element)
    
    return processed_elements


# test_dataset.py / test_dataset2.py, after extract_option: how a response is judged correct
def authors_correct(extracted, answer, yes_no):
    if yes_no:
        return answer.replace(' ', '').lower() in extracted
    return answer in extracted
